/* SPDX-License-Identifier: Apache-2.0 */
/* Stand-in for miniupnpc/miniupnpc.h of the miniupnp submodule. */
#ifndef MINIUPNPC_H_INCLUDED
#define MINIUPNPC_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

const char *miniupnpc_standin_version(void);

#ifdef __cplusplus
}
#endif

#endif
