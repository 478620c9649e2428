"""URL credentials and known secrets out of texts and log lines."""

import logging

from oslo_config import cfg
import pytest

from nova_error_notifier import outbox
from nova_error_notifier import redact


@pytest.mark.parametrize('url,shown', [
    ('rabbit://nova:pw1@h1:5672,nova:pw2@h2:5672/vh',
     'rabbit://nova:***@h1:5672,nova:***@h2:5672/vh'),
    ('mysql+pymysql://u:p@db/x?charset=utf8&ssl_key=k&password=z',
     'mysql+pymysql://u:***@db/x?charset=utf8&ssl_key=***&password=***'),
    ('sqlite:////var/lib/nen/o.sqlite', 'sqlite:////var/lib/nen/o.sqlite'),
    ('https://hooks.example.org/x', 'https://hooks.example.org/x'),
])
def test_url(url, shown):
    assert redact.url(url) == shown


def test_text_masks_urls_and_named_secrets():
    message = ('Unable to connect to http://alice:S3cret%40x@h:1/hook'
               '?token=T0ken: refused; the token T0ken again')
    cleaned = redact.text(message, ['S3cret@x', 'T0ken'])
    assert 'S3cret' not in cleaned and 'T0ken' not in cleaned
    assert 'http://alice:***@h:1/hook' in cleaned


def test_log_filter_covers_other_libraries(caplog):
    conf = cfg.ConfigOpts()
    outbox.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override('connection', 'postgresql://u:Db-Pw-1@db/x?'
                      'sslpassword=Key-Pw-2', group='database')
    scrubber = redact.LogFilter(redact.conf_secrets(conf))
    handler = caplog.handler
    handler.addFilter(scrubber)
    try:
        logging.getLogger('oslo_db.sqlalchemy.engines').warning(
            'URL %s does not contain a driver', conf.database.connection)
        logging.getLogger('x').error('bare secret Key-Pw-2 here')
    finally:
        handler.removeFilter(scrubber)
    assert 'Db-Pw-1' not in caplog.text and 'Key-Pw-2' not in caplog.text
    assert 'does not contain a driver' in caplog.text


def _oslo_logger(name, secrets):
    """A logger writing through oslo.log's formatter and the LogFilter."""
    import io
    import logging
    from oslo_config import cfg
    from oslo_log import formatters
    from oslo_log import log as oslo_log

    from nova_error_notifier import redact as redact_mod
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    conf = cfg.ConfigOpts()
    oslo_log.register_options(conf)
    conf([], default_config_files=[])
    # oslo.log's formatter formats the traceback anew from exc_info.
    handler.setFormatter(formatters.ContextFormatter(config=conf))
    handler.addFilter(redact_mod.LogFilter(secrets))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger, stream


def test_a_traceback_is_masked_too():
    logger, stream = _oslo_logger('nen-test-traceback', ['hunter2-secret'])
    # (Built apart: a traceback quotes the line that raised.)
    url = 'rabbit://nen:%s@ctl:5672/' % 'pw-in-url'
    try:
        raise RuntimeError('cannot reach %s with %s' % (
            url, 'hunter2-secret'))
    except RuntimeError:
        logger.exception('Delivery failed')
    output = stream.getvalue()
    assert 'Traceback' in output and 'RuntimeError' in output
    assert 'pw-in-url' not in output and 'hunter2-secret' not in output


def test_the_summary_of_a_handled_exception_is_masked():
    """oslo.log appends the exception being handled to WARNING lines."""
    logger, stream = _oslo_logger('nen-test-summary', ['hunter2-secret'])
    try:
        raise OSError('login %s refused' % 'hunter2-secret')
    except OSError:
        logger.warning('Could not deliver')
    try:
        try:
            raise OSError('inner %s' % 'hunter2-secret')
        except OSError:
            raise RuntimeError('outer') from None
    except RuntimeError:
        logger.exception('Chained')
    output = stream.getvalue()
    assert 'Could not deliver' in output and 'login *** refused' in output
    assert 'hunter2-secret' not in output
