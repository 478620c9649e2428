"""Where the shared Nova notification corpus lives.

The corpus (``../shared/nova-notification-samples`` beside the checkout, or
``$NOVA_SAMPLES_DIR``) is read in place, never copied into the project. It
is present in CI: when it is missing the tests that need it fail, they do
not skip.
"""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.environ.get('NOVA_SAMPLES_DIR') or os.path.join(
    os.path.dirname(ROOT), 'shared', 'nova-notification-samples')
MANIFEST = os.path.join(CORPUS, 'manifest.json')
FAKE_TOKEN = 'gAAAAABFAKE_TOKEN_FOR_TESTS_DO_NOT_LEAK'
SECTIONS = ('legacy', 'versioned_wire', 'versioned_doc_samples')


def manifest_entries():
    """(section, entry) pairs; raises a clear error when missing."""
    if not os.path.isfile(MANIFEST):
        raise FileNotFoundError(
            'the shared Nova notification corpus is missing: expected %s '
            '(set NOVA_SAMPLES_DIR to its directory)' % MANIFEST)
    with open(MANIFEST, encoding='utf-8') as handle:
        manifest = json.load(handle)
    return [(section, entry) for section in SECTIONS
            for entry in manifest[section]]


def path_of(entry):
    return os.path.join(CORPUS, entry['file'])
