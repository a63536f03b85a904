// SPDX-License-Identifier: Apache-2.0
// Stand-in for src/systeminfo/qdeviceinfo.h of the qtsystems submodule.
#ifndef QDEVICEINFO_H
#define QDEVICEINFO_H

#include <QString>

class QDeviceInfo
{
public:
    static QString standInVersion();
};

#endif // QDEVICEINFO_H
