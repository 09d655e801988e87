"""
Plugin package of vmqtw.

Modules here (and modules third parties drop into any ``vmqtw/plugins``
directory on ``sys.path``) provide factories found with
``twisted.plugin.getPlugins``, e.g. message stores selected by
``message_store = <name>``.
"""
from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list = []
