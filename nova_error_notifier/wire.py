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
"""Read notification messages from files, as they travel on the wire.

Accepted forms, in a file holding one JSON document or JSON lines:

* the body oslo.messaging publishes with ``driver = messagingv2``:
  ``{"oslo.version": "2.0", "oslo.message": "<JSON string>"}``;
* the inner message itself (``driver = messaging``): ``message_id``,
  ``publisher_id``, ``event_type``, ``priority``, ``payload``,
  ``timestamp`` and ``_context_*`` keys;
* Nova's documentation samples (``event_type``, ``priority``,
  ``publisher_id``, ``payload``), whose ``{"$ref": "file#"}`` references are
  resolved relative to the sample's directory;
* a JSON list of any of the above.
"""

import json
import os

ENVELOPE_VERSION = 'oslo.version'
ENVELOPE_MESSAGE = 'oslo.message'
CONTEXT_PREFIX = '_context_'
MAX_REF_DEPTH = 16


class WireError(ValueError):
    """A file or line that holds no readable notification."""


class Message:
    """One notification, split the way oslo.messaging's listener does."""

    __slots__ = ('source', 'ctxt', 'message')

    def __init__(self, source, ctxt, message):
        self.source = source
        #: The request context (``_context_*`` keys without the prefix).
        self.ctxt = ctxt
        #: The message without its context keys.
        self.message = message


def unwrap(body):
    """Return the inner message dict of a wire body (either version)."""
    if isinstance(body, dict) and ENVELOPE_MESSAGE in body:
        inner = body[ENVELOPE_MESSAGE]
        if isinstance(inner, str):
            try:
                inner = json.loads(inner)
            except ValueError as exc:
                raise WireError('oslo.message is not JSON: %s' % exc)
            except RecursionError:
                raise WireError('oslo.message is nested too deeply')
        body = inner
    if not isinstance(body, dict):
        raise WireError('a notification must be a JSON object, not %s'
                        % type(body).__name__)
    return body


def split_context(inner):
    """Separate the ``_context_*`` keys, as oslo.messaging does."""
    ctxt = {}
    message = {}
    for key, value in inner.items():
        if isinstance(key, str) and key.startswith(CONTEXT_PREFIX):
            ctxt[key[len(CONTEXT_PREFIX):]] = value
        else:
            message[key] = value
    return ctxt, message


def _merge(base, override):
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value)
        return merged
    return override


def resolve_refs(obj, base_dir, depth=0):
    """Resolve Nova's ``{"$ref": "file#", ...}`` sample references."""
    if depth > MAX_REF_DEPTH:
        raise WireError('$ref nesting deeper than %d' % MAX_REF_DEPTH)
    if isinstance(obj, list):
        return [resolve_refs(item, base_dir, depth) for item in obj]
    if not isinstance(obj, dict):
        return obj
    if '$ref' in obj and isinstance(obj['$ref'], str):
        ref_path = os.path.join(base_dir, obj['$ref'].split('#', 1)[0])
        try:
            with open(ref_path, encoding='utf-8') as handle:
                target = json.load(handle)
        except (OSError, ValueError) as exc:
            raise WireError('cannot resolve $ref %r: %s' % (obj['$ref'], exc))
        target = resolve_refs(target, os.path.dirname(ref_path), depth + 1)
        rest = {k: v for k, v in obj.items() if k != '$ref'}
        return _merge(target, resolve_refs(rest, base_dir, depth))
    return {key: resolve_refs(value, base_dir, depth)
            for key, value in obj.items()}


def to_message(body, source, base_dir='.'):
    inner = unwrap(body)
    inner = resolve_refs(inner, base_dir)
    ctxt, message = split_context(inner)
    return Message(source, ctxt, message)


def read_file(path):
    """Yield a :class:`Message` or a :class:`WireError` per notification.

    Errors are yielded, not raised, so that one bad line does not hide the
    others.
    """
    base_dir = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding='utf-8', errors='replace') as handle:
            content = handle.read()
    except OSError as exc:
        yield WireError('%s: %s' % (path, exc.strerror or exc))
        return
    try:
        documents = [(path, json.loads(content))]
    except (ValueError, RecursionError):
        documents = []
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            source = '%s:%d' % (path, number)
            try:
                documents.append((source, json.loads(line)))
            except ValueError as exc:
                documents.append((source, WireError('%s: not JSON: %s'
                                                    % (source, exc))))
            except RecursionError:
                documents.append((source, WireError(
                    '%s: nested too deeply' % source)))
    for source, document in documents:
        if isinstance(document, WireError):
            yield document
            continue
        items = document if isinstance(document, list) else [document]
        for index, item in enumerate(items):
            label = source if len(items) == 1 else '%s[%d]' % (source, index)
            try:
                yield to_message(item, label, base_dir)
            except WireError as exc:
                yield WireError('%s: %s' % (label, exc))
            except RecursionError:
                yield WireError('%s: nested too deeply' % label)
