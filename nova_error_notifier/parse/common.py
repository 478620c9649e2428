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
"""Helpers shared by the legacy and versioned parsers.

Everything here is defensive: notifications come from the bus and can hold
anything. A helper given a value of the wrong type returns ``None`` rather
than raising; only :func:`check_envelope` raises, with
:class:`MalformedNotification`, for messages that cannot be read at all.
"""

import ast
import datetime
import hashlib
import re

from oslo_utils import strutils

from nova_error_notifier import record as rec

#: Longest error message kept in a record.
MAX_MESSAGE = 4096
#: Longest details / traceback kept in a record.
MAX_DETAILS = 16384
#: Longest identifier-like value (ids, names, hosts, states).
MAX_SHORT = 255
#: Longest exception string handed to ``ast.literal_eval``.
MAX_LITERAL = 32768
#: At most this many exception arguments are kept.
MAX_ARGUMENTS = 20

ERROR_PRIORITIES = frozenset(('ERROR', 'CRITICAL'))
ERROR_STATE = 'error'


def routine_change(state, old_state):
    """True for a state change worth nothing: not into ERROR, not a build.

    Only plain strings are judged (anything else is for the parser to read
    or refuse). Mirrors the tests of the parsers: an update into ERROR (from
    another state) is a failure, one from building to active resolves the
    build's failures.
    """
    if type(state) is not str or type(old_state) is not str:
        return False
    if state == ERROR_STATE and old_state != ERROR_STATE:
        return False
    return not (old_state == 'building' and state == 'active')


_TRACEBACK_MARK = '\nTraceback (most recent call last):'
_REMOTE_SUFFIX = '_Remote'
_REPR_RE = re.compile(r'\A\s*([A-Za-z_][\w.]*)\((.*)\)\s*\Z', re.S)
_CLASS_RE = re.compile(r'\A[A-Za-z_][\w.]*\Z')
#: Exception keyword arguments whose values are never kept: Nova's own
#: (``adminPass``, ``admin_password``, ``private_key``, ``key_data``,
#: ``encryption_key``...) and any that looks like a credential.
_SECRET_ARG_RE = re.compile(
    r'pass|pwd|secret|token|credential|auth|private|ssh|key_data|'
    r'encrypt|cipher|signature|cert|(\A|_)key\Z', re.I)
#: Longest identifier kept as it is; longer ones are cut and tagged with a
#: hash of the whole value, so that two ids sharing a long prefix stay apart.
MAX_IDENT = MAX_SHORT
_IDENT_KEEP = 200


class MalformedNotification(ValueError):
    """A notification that cannot be read as a Nova notification."""


def text(value, limit=MAX_SHORT):
    """Return ``value`` as a clean, bounded string, or ``None``.

    Non-strings (other than numbers) give ``None``. Lone surrogates, which
    JSON allows and UTF-8 log files do not, are replaced. Strings longer than
    ``limit`` are cut and marked.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    if len(value) > limit:
        value = value[:limit] + '...[truncated]'
    if not value.isascii():
        value = value.encode('utf-8', 'replace').decode('utf-8')
    return value


def ident(value):
    """An identifier (message, request or instance id) as a bounded string.

    Like :func:`text`, but an id longer than ``MAX_IDENT`` is cut and
    tagged with a hash of the whole value: two different ids never become
    the same value, so that neither is taken for a duplicate of the other.
    """
    if isinstance(value, str) and len(value) > MAX_IDENT:
        digest = hashlib.sha256(value.encode('utf-8', 'surrogatepass'))
        return text(value[:_IDENT_KEEP], _IDENT_KEEP) + '...#' + \
            digest.hexdigest()[:16]
    return text(value)


def first_ident(*values):
    """The first of ``values`` that is a non-empty id, as :func:`ident`."""
    for value in values:
        value = ident(value)
        if value:
            return value
    return None


def mask(value):
    """Credentials in a free text (``adminPass=...``) masked."""
    if not value or not isinstance(value, str):
        return value
    return strutils.mask_password(value)


def integer(value):
    """Return ``value`` if it is a plain int (not a bool), else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= 6:
        return int(value)
    return None


def dig(obj, *path):
    """Follow ``path`` through nested dicts; ``None`` when any step fails.

    Versioned ``nova_object`` wrappers are unwrapped on the way, so
    ``dig(payload, 'reason', 'exception')`` works on both plain dicts and
    serialized Nova objects.
    """
    for key in path:
        obj = unwrap(obj)
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def unwrap(obj):
    """Return the ``nova_object.data`` of a serialized Nova object, or obj."""
    if isinstance(obj, dict) and 'nova_object.data' in obj:
        data = obj['nova_object.data']
        return data if isinstance(data, dict) else None
    return obj


def first_text(*values, limit=MAX_SHORT):
    """The first of ``values`` that is a non-empty string, cleaned."""
    for value in values:
        value = text(value, limit)
        if value:
            return value
    return None


def split_publisher(publisher_id):
    """Split a publisher id into (service, host).

    Versioned notifications use ``nova-compute:compute-01``, legacy ones
    ``compute.compute-01`` (host names may contain further dots).
    """
    publisher_id = text(publisher_id) if isinstance(publisher_id, str) \
        else None
    if not publisher_id:
        return None, None
    for sep in (':', '.'):
        if sep in publisher_id:
            service, host = publisher_id.split(sep, 1)
            return service or None, host or None
    return publisher_id, None


def parse_timestamp(value):
    """Parse Nova's ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC) timestamps."""
    value = text(value, 64)
    if not value:
        return None
    candidate = value.strip().replace('T', ' ')
    if candidate.endswith('Z'):
        candidate = candidate[:-1] + '+00:00'
    try:
        stamp = datetime.datetime.fromisoformat(candidate)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=datetime.timezone.utc)
    try:
        return stamp.astimezone(datetime.timezone.utc)
    except (OverflowError, ValueError):
        # 9999-12-31T23:59-23:59 is after the last time Python represents
        # (and 0001-01-01T00:00+23:59 before the first): keep the nearest.
        edge = datetime.datetime.max if stamp.year > 1 else \
            datetime.datetime.min
        return edge.replace(tzinfo=datetime.timezone.utc)


def check_envelope(event_type, payload, publisher_id):
    """Raise :class:`MalformedNotification` for unreadable messages."""
    if not isinstance(event_type, str) or not event_type.strip():
        raise MalformedNotification('event_type is missing or not a string')
    if len(event_type) > MAX_SHORT:
        raise MalformedNotification('event_type is longer than %d characters'
                                    % MAX_SHORT)
    if publisher_id is not None and not isinstance(publisher_id, str):
        raise MalformedNotification('publisher_id is not a string')
    if payload is None:
        raise MalformedNotification('payload is missing')
    if not isinstance(payload, dict):
        raise MalformedNotification('payload is a %s, not an object'
                                    % type(payload).__name__)


def context_fields(ctxt):
    """Pick the request context fields a record needs, and only those."""
    if not isinstance(ctxt, dict):
        ctxt = {}
    return {
        'request_id': ident(ctxt.get('request_id')),
        'global_request_id': ident(ctxt.get('global_request_id')),
        'project_id': first_text(ctxt.get('project_id'),
                                 ctxt.get('tenant'), ctxt.get('project')),
        'project_name': text(ctxt.get('project_name')),
        'user_id': first_text(ctxt.get('user_id'), ctxt.get('user')),
        'user_name': text(ctxt.get('user_name')),
    }


def class_name(value):
    """Return (class name without module and ``_Remote``, was_remote)."""
    if not looks_like_class(value) or len(value) > MAX_SHORT:
        return None, False
    value = value.strip().rsplit('.', 1)[-1]
    remote = value.endswith(_REMOTE_SUFFIX)
    if remote:
        value = value[:-len(_REMOTE_SUFFIX)]
    return (value or None), remote


def split_traceback(message):
    """Cut an appended remote traceback off a message.

    Returns ``(message, traceback or None)``.
    """
    if not isinstance(message, str):
        return message, None
    index = message.find(_TRACEBACK_MARK)
    if index < 0:
        return message, None
    return message[:index], message[index + 1:]


def clean_traceback(value):
    """Nova joins versioned traceback lines with ``,``; undo that."""
    value = text(value, MAX_DETAILS)
    if not value:
        return None
    return value.replace('\n,', '\n')


def _scalar_arguments(kwargs):
    args = []
    if not isinstance(kwargs, dict):
        return ()
    for key, value in kwargs.items():
        if len(args) >= MAX_ARGUMENTS:
            break
        if not isinstance(key, str) or key == 'code':
            continue
        if _SECRET_ARG_RE.search(key):
            continue            # never kept, not even masked
        if value is None or isinstance(value, (bool, int, float)):
            pass
        else:
            value = mask(text(value, 512))
            if value is None:
                continue
        args.append((text(key, 64), value))
    return tuple(args)


class ParsedException:
    """What could be read out of one of Nova's exception strings."""

    __slots__ = ('exception', 'remote', 'message', 'reason', 'code',
                 'arguments')

    def __init__(self, exception=None, remote=False, message=None,
                 reason=None, code=None, arguments=()):
        self.exception = exception
        self.remote = remote
        self.message = message
        self.reason = reason
        self.code = code
        self.arguments = arguments


def _literal(source):
    if len(source) > MAX_LITERAL:
        return None
    try:
        return ast.literal_eval(source)
    except Exception:
        # SyntaxError, ValueError, RecursionError, MemoryError...: the text
        # is not a Python literal, the caller falls back to plain text.
        return None


def parse_exception(value):
    """Read a legacy exception value into a :class:`ParsedException`.

    Nova's legacy notifications carry exceptions in three forms:

    * the repr of a dict ``{'kwargs': {...}, 'message': ..., 'class': ...}``
      (a ``NovaException`` passed through ``to_primitive``);
    * the repr of an exception, ``libvirtError("...")``;
    * plain text, or (rarely) an already decoded dict.

    Python literals are read with :func:`ast.literal_eval`, never ``eval``;
    anything that does not parse is kept as plain text.
    """
    if isinstance(value, str):
        if len(value) > MAX_LITERAL:
            # Too long to be one of Nova's exception reprs: plain text.
            return ParsedException(message=text(value, MAX_MESSAGE))
        stripped = value.strip()
        literal = None
        if stripped.startswith('{') and stripped.endswith('}'):
            literal = _literal(stripped)
        if isinstance(literal, dict):
            value = literal
        else:
            return _parse_repr(stripped)
    if not isinstance(value, dict):
        return ParsedException()
    exception, remote = class_name(value.get('class'))
    kwargs = value.get('kwargs')
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    message = text(value.get('message'), MAX_MESSAGE)
    reason = text(kwargs.get('reason'), MAX_MESSAGE)
    return ParsedException(exception=exception, remote=remote,
                           message=message, reason=reason,
                           code=integer(kwargs.get('code')),
                           arguments=_scalar_arguments(kwargs))


def _parse_repr(stripped):
    match = _REPR_RE.match(stripped)
    if not match:
        return ParsedException(message=text(stripped, MAX_MESSAGE) or None)
    exception, remote = class_name(match.group(1))
    inner = match.group(2).strip()
    args = _literal('(' + inner + ',)') if inner else ()
    if isinstance(args, tuple):
        strings = [a for a in args if isinstance(a, str)]
        message = strings[0] if strings else None
    else:
        message = inner.strip('\'"')
    return ParsedException(exception=exception, remote=remote,
                           message=text(message, MAX_MESSAGE) or None)


def looks_like_class(value):
    return isinstance(value, str) and bool(_CLASS_RE.match(value.strip()))


def useful_reason(reason, message):
    """Keep an exception's reason only where it says more than message."""
    if not reason or not reason.strip():
        return None
    if message and reason.strip() in message:
        return None
    return reason


def synthetic_events(event_type, state, old_state, is_create_failure):
    """Derive the service's own event names for one error."""
    events = []
    if is_create_failure:
        events.append(rec.CREATE_FAILED)
    if state == ERROR_STATE and old_state != ERROR_STATE:
        events.append(rec.ERROR_STATE)
    return tuple(events)
