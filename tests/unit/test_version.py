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
"""The version the service reports (version.py)."""

from importlib import metadata

from nova_error_notifier import version


def test_version_is_the_installed_distributions():
    assert version.version_string() == metadata.version('nova-error-notifier')
    assert version.version_info.package == 'nova-error-notifier'


def test_a_tree_without_package_metadata_says_unknown(monkeypatch):
    class NotInstalled:
        def release_string(self):
            raise Exception('Versioning for this project requires either '
                            'an sdist tarball, or access to an upstream '
                            'git repository.')

    monkeypatch.setattr(version, 'version_info', NotInstalled())
    assert version.version_string() == 'unknown'
