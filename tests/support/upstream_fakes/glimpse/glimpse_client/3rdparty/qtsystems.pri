# SPDX-License-Identifier: Apache-2.0
# Stand-in for glimpse_client's 3rdparty/qtsystems.pri: headers and the static library.
INCLUDEPATH += $$PWD/qtsystems/src/systeminfo

LIBS += $$BUILD_DIRECTORY/3rdparty/libqtsystems.a
PRE_TARGETDEPS += $$BUILD_DIRECTORY/3rdparty/libqtsystems.a
