// SPDX-License-Identifier: Apache-2.0
// Stand-in for glimpse_client's src/libclient/export.h.
#ifndef LIBCLIENT_EXPORT_H
#define LIBCLIENT_EXPORT_H

#include <QtGlobal>

#ifdef LIBCLIENT_BUILD
# define CLIENT_API Q_DECL_EXPORT
#else
# define CLIENT_API Q_DECL_IMPORT
#endif

#endif // LIBCLIENT_EXPORT_H
