# SPDX-License-Identifier: BSD-3-Clause
# glimpse_client's 3rdparty/breakpad.pri (Copyright (c) 2014-2015, University of Applied
# Sciences Augsburg; BSD-3-Clause), unchanged below, so the role's breakpad patch applies here.
BREAKPAD_PATH = $$PWD/breakpad

INCLUDEPATH += $$BREAKPAD_PATH \
               $$BREAKPAD_PATH/src

android:INCLUDEPATH += $$BREAKPAD_PATH/src/common/android/include
android:QMAKE_CXXFLAGS += -std=gnu++0x

# Breakpad does not work on ios yet (for us)
!ios {
    CONFIG += breakpad-builtin
}

breakpad-builtin {
    DEFINES += HAVE_BREAKPAD

    *clang*|*g++*|*llvm*: QMAKE_CXXFLAGS += -g
    *msvc*: QMAKE_CXXFLAGS += /Zi
}

# Linking
win32 {
    CONFIG(release, debug|release):BUILDCONFIG = "release"
    else:BUILDCONFIG = "debug"

    LIBS += -L$$BUILD_DIRECTORY/3rdparty/$$BUILDCONFIG -lbreakpad
    PRE_TARGETDEPS = $$BUILD_DIRECTORY/3rdparty/$$BUILDCONFIG/breakpad.lib
} else:!ios {
    LIBS += $$BUILD_DIRECTORY/3rdparty/libbreakpad.a
    PRE_TARGETDEPS = $$BUILD_DIRECTORY/3rdparty/libbreakpad.a
}
