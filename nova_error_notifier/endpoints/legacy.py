# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
"""Endpoint plugin for Nova's legacy (unversioned) notifications."""

from nova_error_notifier.endpoints import base
from nova_error_notifier.parse import legacy


class LegacyNovaEndpoint(base.NovaEndpoint):
    """Errors from ``notifications`` (legacy payloads).

    Handles ``compute.instance.*.error``, ``compute_task.*``, the
    ``wrap_exception`` notifications named after the failed method
    (``resize_instance``, ...), ``compute.libvirt.error``, any other
    ERROR-priority notification, and ``compute.instance.update`` into ERROR.
    """

    FORMAT = legacy.FORMAT
    VERSIONED = False
    INFO_EVENTS = frozenset((legacy.UPDATE_EVENT,) +
                            tuple(legacy.CREATE_END_EVENTS))
    parse = staticmethod(legacy.parse)
    routine = staticmethod(legacy.routine_update)
