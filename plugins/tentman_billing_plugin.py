"""The "Billing runs" plugin (tentman.plugin) for deployments that put TentMan's code on the path
instead of installing the tentman-billing wheel. Where the wheel is installed, Airflow already loads
the plugin through the wheel's entry point, and this file defines nothing (no duplicate)."""

import tentman.plugin

if not tentman.plugin.registered_by_entry_point():
    TentmanBillingPlugin = tentman.plugin.TentmanBillingPlugin
