// SPDX-License-Identifier: Apache-2.0
#include "mplanecontroller.h"
#include "log.h"
#include "types.h"
#include "webrequester.h"

#include "miniupnpc/miniupnpc.h"
#include "qdeviceinfo.h"

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QNetworkReply>
#include <QNetworkRequest>
#include <QUrl>

MPlaneController::MPlaneController(const Settings *settings, QObject *parent)
: QObject(parent)
, m_settings(settings)
{
}

QString MPlaneController::components()
{
    return QString("miniupnpc %1, systeminfo %2")
        .arg(QString::fromLatin1(miniupnpc_standin_version()), QDeviceInfo::standInVersion());
}

void MPlaneController::sendCapabilities()
{
    QUrl url(m_settings->supervisorAddress());
    url.setPath("/register/capability");

    // glimpse-ping as upstream's PingDefinition::capability() describes it.
    QJsonObject parameters;
    for (const char *name : {"glimpse.ping.type", "destination.url", "packets.ip",
                             "glimpse.ping.timeout.ms", "glimpse.ping.interval.ms", "ttl",
                             "destination.port", "source.port", "glimpse.ping.payload"})
    {
        parameters.insert(name, "*");
    }
    QJsonObject capability{
        {"capability", "measure"}, {"label", "glimpse-ping"}, {"parameters", parameters},
        {"results", QJsonArray{"rtt.ms.min", "rtt.ms.max", "rtt.ms.avg", "rtt.ms.stdev",
                               "packets.ip.sent", "packets.ip.received"}},
        {"version", 0}, {"when", "now"},
        {"registry", "https://www.measure-it.net/static/glimpse_registry.json"}};
    QJsonObject envelope{{"envelope", "message"}, {"version", 0},
                         {"contents", QJsonArray{capability}}};

    QNetworkRequest request(url);
    request.setHeader(QNetworkRequest::ContentTypeHeader, "application/x-mplane+json");
    request.setTransferTimeout(15000);
    WebRequester::configureTls(request, m_settings);

    glimpseLog("DEBUG", "MPlaneController::sendCapabilities",
               QString("Supervisor url set to %1").arg(m_settings->supervisorAddress()));
    m_reply = m_manager.post(request, QJsonDocument(envelope).toJson(QJsonDocument::Compact));
    connect(m_reply, &QNetworkReply::sslErrors, this, &MPlaneController::onSslErrors);
    connect(m_reply, &QNetworkReply::finished, this, &MPlaneController::onFinished);
}

void MPlaneController::onSslErrors(const QList<QSslError> &errors)
{
    for (const QSslError &error : errors)
    {
        glimpseLog("ERROR", "WebRequester::sslErrors",
                   QString("SSL-Error: %1").arg(error.errorString()));
    }
}

void MPlaneController::onFinished()
{
    const bool ok = m_reply->error() == QNetworkReply::NoError;
    if (ok)
    {
        glimpseLog("INFO", "MPlaneController::capabilitiesFinished",
                   QString("Capabilities sent (HTTP %1)")
                       .arg(m_reply->attribute(QNetworkRequest::HttpStatusCodeAttribute).toInt()));
    }
    else
    {
        glimpseLog("ERROR", "MPlaneController::capabilitiesError",
                   QString("Error sending capabilities: %1").arg(m_reply->errorString()));
    }
    m_reply->deleteLater();
    m_reply = nullptr;
    emit finished(ok);
}
