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
"""Enrichment: what Nova's API says about the failed server and request.

Nova's fault model puts the truth in its API: a server in ERROR carries a
``fault`` (code, message, details, created) and the Server Actions API lists
what happened to a request, step by step. With ``[enrichment] enabled`` each
alert with an instance uuid is completed, before delivery, with:

* ``server``: status, name, flavor, host (admin fields when the credentials
  allow), from ``GET /servers/{id}``;
* ``fault``: the server's fault (Nova shows it for ERROR or DELETED servers
  only, and its ``details`` to admins only when the code is 500);
* ``action``: ``GET /servers/{id}/os-instance-actions/{request_id}``: the
  action, its start and each event with its result, host (microversion
  2.62), details (2.84) and traceback (admins);
* the project's and user's names, from Keystone.

Only well-formed ids are sent: the instance uuid must be a canonical UUID
(8-4-4-4-12 hex digits), the request id ``req-<uuid>``, the project and
user ids short runs of letters, digits, ``-`` and ``_``. They come from
the bus, and a value such as ``../../os-hypervisors`` or
``x?all_tenants=1`` must not become another API call: an id that is not
well-formed is not asked about, and the alert says so in its
``enrichment_note`` (a bad request id only skips the action call).

Nova's API is the one of the alert's region: an alert from a named bus
(``[bus:NAME] region_name``) asks the compute endpoint of that region in
the Keystone catalog (keystoneauth's ``region_name``); an alert without a
region uses ``[enrichment] region_name`` and ``compute_endpoint_override``
as they are. Keystone is the one of the ``[enrichment]`` settings for
every alert.

All of it within ``[enrichment] timeout`` seconds per incident: on a
timeout, 403, 404 or any error the alert goes out without it, marked not
enriched, with one log line saying why. Answers are cached for
``[enrichment] cache_ttl`` seconds so that a storm of incidents on one
server or project does not hammer the APIs.
"""

from concurrent import futures
import dataclasses
import re
import threading
import time
from urllib import parse

from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import logsafe
from nova_error_notifier import staff as staff_mod

LOG = log.getLogger(__name__)

GROUP = 'enrichment'

ENRICHMENT_OPTS = [
    cfg.BoolOpt('enabled',
                default=False,
                help='Complete alerts with the server\'s fault and the '
                     'request\'s action events from Nova\'s API, and the '
                     'project and user names from Keystone (credentials '
                     'from [service_credentials], project-scoped for '
                     'Nova).'),
    cfg.FloatOpt('timeout',
                 default=2.0,
                 min=0.1,
                 help='Seconds all the API calls of one incident may take '
                      'together; past that the alert goes out without '
                      'them.'),
    cfg.StrOpt('interface',
               default='public',
               choices=['public', 'internal', 'admin'],
               help='Interface of the compute and identity endpoints in '
                    'the catalog.'),
    cfg.StrOpt('region_name',
               help='Region of the endpoints. Default: [DEFAULT] '
                    'region_name. An alert from a bus with a region (see '
                    '[bus:NAME] region_name) asks the compute endpoint of '
                    'its own region.'),
    cfg.StrOpt('compute_api_version',
               default='2.84',
               help='Compute API microversion to ask for (2.62 adds event '
                    'hosts, 2.84 event details).'),
    cfg.StrOpt('compute_endpoint_override',
               help='URL of the compute API to use instead of the one in '
                    'the Keystone catalog, for the alerts without a '
                    'region.'),
    cfg.IntOpt('cache_ttl',
               default=30,
               min=0,
               help='Seconds API answers are cached.'),
]

#: Longest text kept of a fault's details or an event's traceback.
MAX_TEXT = 8192

_UUID_RE = re.compile(r'[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-'
                      r'[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z')
_REQUEST_ID_RE = re.compile(r'req-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-'
                            r'[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-'
                            r'[0-9a-fA-F]{12}\Z')
#: Keystone ids: 32 hex digits by default, other drivers (LDAP, federation)
#: make ids of their own, never with a '/', '?', '%', '.' or space.
_KEYSTONE_ID_RE = re.compile(r'[A-Za-z0-9_-]{1,64}\Z')

#: Notes of the ids that are not asked about.
BAD_INSTANCE = "instance id is not a UUID: Nova's API was not asked"
BAD_REQUEST = ("request id is not req-<uuid>: the request's actions were "
               "not asked for")
BAD_KEYSTONE_ID = "%s id is not a Keystone id: Keystone was not asked"


def is_uuid(value):
    """True for a canonical UUID (8-4-4-4-12 hex digits)."""
    return isinstance(value, str) and bool(_UUID_RE.match(value))


def is_request_id(value):
    """True for ``req-<uuid>``, the request ids Nova makes."""
    return isinstance(value, str) and bool(_REQUEST_ID_RE.match(value))


def is_keystone_id(value):
    """True for an id Keystone could have made (no path or query parts)."""
    return isinstance(value, str) and bool(_KEYSTONE_ID_RE.match(value))


def register_opts(conf):
    conf.register_opts(ENRICHMENT_OPTS, group=GROUP)
    staff_mod.register_opts(conf)


def list_opts():
    return [(GROUP, ENRICHMENT_OPTS)]


class _Skip(Exception):
    """An answer that ends the enrichment (with the reason)."""


def _text(value, limit=MAX_TEXT):
    if value is None:
        return None
    value = str(value)
    return value if len(value) <= limit else value[:limit] + '...'


class Enricher:
    """Asks Nova and Keystone about an alert's server and request."""

    def __init__(self, conf, clock=time.monotonic):
        self.conf = conf
        self.clock = clock
        self._lock = threading.Lock()
        self._cache = {}
        self._adapters = {}
        self._sessions = {}
        self._pool = futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix='enrich')

    @property
    def options(self):
        return self.conf[GROUP]

    def check(self):
        return staff_mod.StaffDirectory(self.conf).check()

    def _adapter(self, service_type, region=None):
        """The adapter of a service; of ``region``'s compute API if given.

        One session per service (the compute APIs of every region share
        one).
        """
        region = region if service_type == 'compute' else None
        with self._lock:
            if (service_type, region) not in self._adapters:
                session = self._sessions.get(service_type)
                if session is None:
                    auth = ks_loading.load_auth_from_conf_options(
                        self.conf, staff_mod.CREDENTIALS_GROUP)
                    session = ks_loading.load_session_from_conf_options(
                        self.conf, staff_mod.CREDENTIALS_GROUP, auth=auth)
                    self._sessions[service_type] = session
                kwargs = {}
                if service_type == 'compute':
                    kwargs['default_microversion'] = \
                        self.options.compute_api_version
                    if self.options.compute_endpoint_override and \
                            region is None:
                        kwargs['endpoint_override'] = \
                            self.options.compute_endpoint_override
                else:
                    kwargs['version'] = (3, 0)
                self._adapters[service_type, region] = ks_adapter.Adapter(
                    session, service_type=service_type,
                    interface=self.options.interface,
                    region_name=(region or self.options.region_name or
                                 self.conf.region_name or None),
                    **kwargs)
            return self._adapters[service_type, region]

    def _get(self, service_type, path, deadline, region=None):
        """GET ``path`` (cached); raises _Skip with a reason on failure.

        ``region``: the region of the compute API asked (None: the
        ``[enrichment]`` settings').
        """
        region = region if service_type == 'compute' else None
        key = (service_type, region, path)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], _Skip):
                raise cached[1]
            return cached[1]
        remaining = deadline - now
        if remaining <= 0:
            raise _Skip('the %.1f s budget is spent' % self.options.timeout)
        try:
            response = self._adapter(service_type, region).get(
                path, timeout=remaining)
            value = response.json()
        except ks_exc.NotFound:
            error = _Skip('%s %s: 404 Not Found' % (service_type, path))
            self._store(key, error)
            raise error
        except ks_exc.Forbidden:
            error = _Skip('%s %s: 403 Forbidden (the credentials lack a '
                          'role)' % (service_type, path))
            self._store(key, error)
            raise error
        except (ks_exc.ConnectTimeout, ks_exc.RequestTimeout):
            raise _Skip('%s API timed out' % service_type)
        except ks_exc.ClientException as exc:
            raise _Skip('%s %s: %s' % (service_type, path,
                                       type(exc).__name__))
        except ValueError:
            raise _Skip('%s %s: not JSON' % (service_type, path))
        self._store(key, value)
        return value

    def _store(self, key, value):
        with self._lock:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = (self.clock() + self.options.cache_ttl, value)

    # -- one incident ---------------------------------------------------------

    def _collect(self, alert, deadline):
        found = {}
        notes = []
        if is_uuid(alert.instance_uuid):
            self._collect_server(alert, deadline, found, notes)
        else:
            notes.append(BAD_INSTANCE)
        for kind, key, ident in (('project', 'project_name',
                                  alert.project_id),
                                 ('user', 'user_name', alert.user_id)):
            if not ident or getattr(alert, key):
                continue
            if not is_keystone_id(ident):
                notes.append(BAD_KEYSTONE_ID % kind)
                continue
            try:
                found[key] = (self._get('identity', '/%ss/%s' % (
                    kind, parse.quote(ident, safe='')), deadline)
                    .get(kind) or {}).get('name')
            except _Skip as exc:
                notes.append(str(exc))
        return found, notes

    def _collect_server(self, alert, deadline, found, notes):
        """The server, its fault and the request's action (valid ids)."""
        uuid = parse.quote(alert.instance_uuid, safe='')
        try:
            server = self._get('compute', '/servers/%s' % uuid,
                               deadline, alert.region).get('server') or {}
            found['server'] = {
                'status': server.get('status'),
                'name': server.get('name'),
                'flavor': (server.get('flavor') or {}).get(
                    'original_name') or (server.get('flavor') or {}).get(
                        'id'),
                'host': server.get('OS-EXT-SRV-ATTR:host'),
                'updated': server.get('updated'),
            }
            fault = server.get('fault')
            if isinstance(fault, dict):
                found['fault'] = {
                    'code': fault.get('code'),
                    'message': _text(fault.get('message'), 1024),
                    'details': _text(fault.get('details')),
                    'created': fault.get('created'),
                }
        except _Skip as exc:
            notes.append(str(exc))
        if alert.request_id and not is_request_id(alert.request_id):
            notes.append(BAD_REQUEST)
        elif alert.request_id:
            try:
                action = self._get(
                    'compute', '/servers/%s/os-instance-actions/%s' % (
                        uuid, parse.quote(alert.request_id, safe='')),
                    deadline, alert.region).get('instanceAction') or {}
                found['action'] = {
                    'action': action.get('action'),
                    'request_id': action.get('request_id'),
                    'start_time': action.get('start_time'),
                    'message': action.get('message'),
                    'events': [{
                        'event': e.get('event'),
                        'result': e.get('result'),
                        'start_time': e.get('start_time'),
                        'finish_time': e.get('finish_time'),
                        'host': e.get('host'),
                        'details': _text(e.get('details'), 1024),
                        'traceback': _text(e.get('traceback')),
                    } for e in action.get('events') or []],
                }
            except _Skip as exc:
                notes.append(str(exc))

    def enrich(self, alert):
        """The alert with what the APIs say, or marked not enriched.

        Never raises and never takes longer than the budget.
        """
        if not self.options.enabled or alert.is_digest or \
                not alert.instance_uuid:
            return alert
        budget = self.options.timeout
        deadline = self.clock() + budget
        future = self._pool.submit(self._collect, alert, deadline)
        try:
            found, notes = future.result(timeout=budget)
        except futures.TimeoutError:
            found, notes = {}, ['the APIs did not answer within %.1f s'
                                % budget]
        except Exception as exc:
            found, notes = {}, ['%s: %s' % (type(exc).__name__, exc)]
        enriched = bool(found.get('server') or found.get('action'))
        if notes:
            LOG.warning('Alert %s (instance %s, request %s) %s: %s',
                        alert.id, logsafe.escape(alert.instance_uuid),
                        logsafe.escape(alert.request_id),
                        'partly enriched' if enriched else 'not enriched',
                        logsafe.escape('; '.join(notes), 500))
        enrichment = {k: v for k, v in found.items()
                      if k in ('server', 'fault', 'action')}
        changes = {'enriched': enriched, 'enrichment': enrichment or None,
                   'enrichment_note': '; '.join(notes) or None}
        for key in ('project_name', 'user_name'):
            if found.get(key):
                changes[key] = found[key]
        return dataclasses.replace(alert, **changes)
