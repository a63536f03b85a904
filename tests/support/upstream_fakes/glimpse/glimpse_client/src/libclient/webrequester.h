// SPDX-License-Identifier: Apache-2.0
// Stand-in for glimpse_client's WebRequester: the TLS set-up of its requests.
#ifndef WEBREQUESTER_H
#define WEBREQUESTER_H

#include "export.h"
#include "settings.h"

#include <QNetworkRequest>

class CLIENT_API WebRequester
{
public:
    // Gives the request the client certificate, key and CAs named in the settings (all three
    // or none, as upstream).
    static void configureTls(QNetworkRequest &request, const Settings *settings);
};

#endif // WEBREQUESTER_H
