// SPDX-License-Identifier: Apache-2.0
// Stand-in for the breakpad glimpse_client vendors (2013), which fails to compile with the
// compilers of Debian 12 (struct ucontext, tgkill, std::max): any use of it must fail too.
#error "vendored breakpad (stand-in): does not build; build with CONFIG+=no_breakpad"
