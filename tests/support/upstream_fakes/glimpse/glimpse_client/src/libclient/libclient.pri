# SPDX-License-Identifier: Apache-2.0
# Stand-in for glimpse_client's src/libclient/libclient.pri: how the console links libglimpse.
QT += network

INCLUDEPATH += $$PWD

LIBS += -L$$BUILD_DIRECTORY/src/libclient -lglimpse
PRE_TARGETDEPS += $$BUILD_DIRECTORY/src/libclient/libglimpse.so
