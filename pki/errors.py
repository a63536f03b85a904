# SPDX-License-Identifier: Apache-2.0
"""The one exception every PKI failure is reported with."""


class PKIError(Exception):
    """A problem the user can fix: printed as one line, naming the problem and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix
