// SPDX-License-Identifier: BSD-3-Clause
// The TLS set-up of glimpse_client's WebRequester::start() (src/libclient/webrequester.cpp,
// Copyright (c) 2014-2015, University of Applied Sciences Augsburg; BSD-3-Clause), line for
// line, so the role's TLS patch applies here and changes the same behaviour: unpatched, only
// the first certificate of the CA file is trusted and only RSA keys load.
#include "webrequester.h"

#include <QFile>
#include <QList>
#include <QSslCertificate>
#include <QSslConfiguration>
#include <QSslKey>

void WebRequester::configureTls(QNetworkRequest &request, const Settings *settings)
{
    // load the certificate if needed
    if (!settings->clientCert().isEmpty() && !settings->caCert().isEmpty() &&
            !settings->privateKey().isEmpty())
    {
        QSslConfiguration configuration;
        QFile certFile(settings->clientCert()); //"/home/mike/tmp/certs/Client-SSB.crt");
        certFile.open(QFile::ReadOnly);
        QSslCertificate cert(&certFile);
        certFile.close();
        configuration.setLocalCertificate(cert);

        QList<QSslCertificate> certs;
        certFile.setFileName(settings->caCert()); //"/home/mike/tmp/certs/root-ca.crt");
        certFile.open(QFile::ReadOnly);
        QSslCertificate caCert(&certFile);
        certFile.close();
        certs.append(caCert);

        configuration.setCaCertificates(certs);

        QFile keyFile(settings->privateKey()); // "/home/mike/tmp/certs/Client-SSB-plaintext.key");
        keyFile.open(QFile::ReadOnly);
        QSslKey key(&keyFile, QSsl::Rsa, QSsl::Pem, QSsl::PrivateKey);
        configuration.setPrivateKey(key);
        keyFile.close();

        request.setSslConfiguration(configuration);
    }
}
