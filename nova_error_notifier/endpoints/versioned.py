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
"""Endpoint plugin for Nova's versioned notifications."""

from nova_error_notifier.endpoints import base
from nova_error_notifier.parse import versioned


class VersionedNovaEndpoint(base.NovaEndpoint):
    """Errors from ``versioned_notifications`` (``nova_object`` payloads).

    Handles ``compute.exception``, ``instance.*.error``,
    ``compute_task.*.error``, ``libvirt.connect.error``, any other
    ERROR-priority notification, and ``instance.update`` into ERROR.
    """

    FORMAT = versioned.FORMAT
    VERSIONED = True
    INFO_EVENTS = frozenset((versioned.UPDATE_EVENT,) +
                            tuple(versioned.CREATE_END_EVENTS))
    parse = staticmethod(versioned.parse)
    routine = staticmethod(versioned.routine_update)
