// SPDX-License-Identifier: Apache-2.0
// Stand-in for glimpse_client's console (src/console/main.cpp): the options an mPlane
// deployment uses, one registration attempt with the supervisor over (mutual) TLS, then idle
// until stopped, logging to stdout as upstream does.
#include "log.h"
#include "mplanecontroller.h"
#include "settings.h"

#include <QCommandLineOption>
#include <QCommandLineParser>
#include <QCoreApplication>

int main(int argc, char *argv[])
{
    QCoreApplication::setOrganizationDomain("de.hsaugsburg.informatik");
    QCoreApplication::setOrganizationName("HS-Augsburg");
    QCoreApplication::setApplicationName("mPlaneClient");
    QCoreApplication::setApplicationVersion("2.7.1-probeforge-standin");

    QCoreApplication app(argc, argv);

    QCommandLineParser parser;
    parser.setApplicationDescription("GLIMPSE console client (probeforge test stand-in)");
    parser.addHelpOption();
    parser.addVersionOption();

    QCommandLineOption supervisorOption("supervisor", "Supervisor address", "address");
    parser.addOption(supervisorOption);
    QCommandLineOption caCertOption("ca-cert", "CA-certificate", "path-to-file");
    parser.addOption(caCertOption);
    QCommandLineOption clientCertOption("client-cert", "Client-certificate", "path-to-file");
    parser.addOption(clientCertOption);
    QCommandLineOption privateKeyOption("private-key",
                                        "Private key for the certificate authentification",
                                        "path-to-file");
    parser.addOption(privateKeyOption);

    parser.process(app);

    glimpseLog("INFO", "int main(int, char**)",
               QString("GLIMPSE version %1").arg(QCoreApplication::applicationVersion()));
    glimpseLog("INFO", "int main(int, char**)",
               QString("Built with %1").arg(MPlaneController::components()));

    Settings settings;
    settings.setSupervisorAdress(parser.value(supervisorOption));
    settings.setCaCert(parser.value(caCertOption));
    settings.setClientCert(parser.value(clientCertOption));
    settings.setPrivateKey(parser.value(privateKeyOption));

    if (settings.supervisorAddress().isEmpty())
    {
        glimpseLog("ERROR", "int main(int, char**)", "No supervisor address (--supervisor)");
        return 1;
    }

    MPlaneController controller(&settings);
    QObject::connect(&controller, &MPlaneController::finished, [](bool) {
        glimpseLog("INFO", "int main(int, char**)", "Idle until stopped");
    });
    controller.sendCapabilities();

    return app.exec();
}
