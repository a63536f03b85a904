// SPDX-License-Identifier: Apache-2.0
// Stand-in for glimpse_client's Settings: the console's command-line values.
#ifndef SETTINGS_H
#define SETTINGS_H

#include "export.h"

#include <QString>

class CLIENT_API Settings
{
public:
    QString supervisorAddress() const { return m_supervisor; }
    void setSupervisorAdress(const QString &value) { m_supervisor = value; }

    QString caCert() const { return m_caCert; }
    void setCaCert(const QString &value) { m_caCert = value; }

    QString clientCert() const { return m_clientCert; }
    void setClientCert(const QString &value) { m_clientCert = value; }

    QString privateKey() const { return m_privateKey; }
    void setPrivateKey(const QString &value) { m_privateKey = value; }

private:
    QString m_supervisor;
    QString m_caCert;
    QString m_clientCert;
    QString m_privateKey;
};

#endif // SETTINGS_H
