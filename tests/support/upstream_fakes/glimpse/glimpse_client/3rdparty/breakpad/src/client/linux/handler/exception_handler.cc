// SPDX-License-Identifier: Apache-2.0
#include "client/linux/handler/exception_handler.h"
