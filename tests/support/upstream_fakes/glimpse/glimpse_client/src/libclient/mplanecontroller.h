// SPDX-License-Identifier: Apache-2.0
// Stand-in for glimpse_client's MPlaneController: registers the console's capabilities with the
// supervisor once (upstream repeats this and polls for specifications every 9 s).
#ifndef MPLANECONTROLLER_H
#define MPLANECONTROLLER_H

#include "export.h"
#include "settings.h"

#include <QList>
#include <QNetworkAccessManager>
#include <QObject>
#include <QSslError>

class QNetworkReply;

class CLIENT_API MPlaneController : public QObject
{
    Q_OBJECT

public:
    explicit MPlaneController(const Settings *settings, QObject *parent = nullptr);

    // One POST of the capability envelope to <supervisor>/register/capability.
    void sendCapabilities();

    // What the library was built with (proves the submodules were in place).
    static QString components();

signals:
    void finished(bool ok);

private slots:
    void onFinished();
    void onSslErrors(const QList<QSslError> &errors);

private:
    const Settings *m_settings;
    QNetworkAccessManager m_manager;
    QNetworkReply *m_reply = nullptr;
};

#endif // MPLANECONTROLLER_H
