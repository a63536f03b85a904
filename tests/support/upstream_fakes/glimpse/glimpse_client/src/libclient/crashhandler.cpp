// SPDX-License-Identifier: Apache-2.0
// Stand-in for glimpse_client's crash handler: built only with breakpad, which does not build.
#include "client/linux/handler/exception_handler.h"
