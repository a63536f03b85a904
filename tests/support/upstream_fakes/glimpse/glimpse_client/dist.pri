# SPDX-License-Identifier: Apache-2.0
# Stand-in for glimpse_client's dist.pri: where "make install" would put things on Linux.
equals(TEMPLATE, lib): target.path = /usr/lib
equals(TEMPLATE, app): target.path = /usr/bin
INSTALLS *= target
