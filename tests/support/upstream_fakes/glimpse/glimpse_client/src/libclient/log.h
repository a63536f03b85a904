// SPDX-License-Identifier: Apache-2.0
// Log lines shaped like glimpse_client's: "hh:mm:ss" "LEVEL" "function" : "message".
#ifndef LOG_H
#define LOG_H

#include <QString>
#include <QTime>

#include <cstdio>

inline void glimpseLog(const char *level, const char *where, const QString &message)
{
    std::printf("\"%s\" \"%s\" \"%s\" : \"%s\"\n",
                qPrintable(QTime::currentTime().toString("hh:mm:ss")), level, where,
                qPrintable(message));
    std::fflush(stdout);
}

#endif // LOG_H
