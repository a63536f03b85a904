#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Same entry point as upstream Tstat: generate configure and Makefile.in from the sources.
set -e
cd "$(dirname "$0")"
touch README NEWS
for dir in config m4; do
  test -d "$dir" || mkdir "$dir"
done
autoreconf --force --install -I config -I m4
