// SPDX-License-Identifier: BSD-3-Clause
// The head of glimpse_client's src/libclient/types.h (Copyright (c) 2014-2015, University of
// Applied Sciences Augsburg; BSD-3-Clause), so the role's QHostAddress patch applies here.
#ifndef TYPES_H
#define TYPES_H

#include <QMetaObject>
#include <QMetaEnum>
#include <QHostAddress>
#include <QList>
#include <QUuid>
#include "export.h"

// UDP request types
enum RequestType
{
    UnknownRequest = 0,

    // Server requests
    ClientInfoRequest,
    PeerRequest,
    RegisteredClientResponse,

    // Client requests
    PeerResponse = 1024
};

#endif // TYPES_H
