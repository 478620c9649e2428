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
"""Console scripts: they parse arguments and call into the package."""

import warnings

# oslo.messaging imports oslo.service, which imports eventlet and makes it
# print a deprecation banner on every start. The service never uses
# eventlet (its listener runs the threading executor): keep the banner out
# of operators' terminals.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
