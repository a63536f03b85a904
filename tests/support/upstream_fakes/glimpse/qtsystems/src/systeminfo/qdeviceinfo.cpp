// SPDX-License-Identifier: Apache-2.0
#include "qdeviceinfo.h"

QString QDeviceInfo::standInVersion()
{
    return QStringLiteral("stand-in");
}
