# SPDX-License-Identifier: Apache-2.0
# Stand-in for glimpse_client's 3rdparty/miniupnpc.pri: headers and the static library.
DEFINES += HAVE_UPNP MINIUPNP_STATICLIB
INCLUDEPATH += $$PWD/miniupnp

LIBS += $$BUILD_DIRECTORY/3rdparty/libminiupnp.a
PRE_TARGETDEPS += $$BUILD_DIRECTORY/3rdparty/libminiupnp.a
