/* SPDX-License-Identifier: Apache-2.0 */
#include "miniupnpc.h"

const char *miniupnpc_standin_version(void)
{
    return "stand-in";
}
