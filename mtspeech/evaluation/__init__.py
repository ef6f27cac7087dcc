"""Evaluation: every task's metrics on a manifest (`evaluate`), confidence intervals and the
paired bootstrap (`stats`), and the figures of training runs and ablations (`plots`).

The metric functions themselves (`mtspeech.metrics`) sit one level below, at the top of the
package: each task owns its metrics and imports them, and `evaluate` imports the tasks, so
putting them here would make `tasks/` and `evaluation/` import each other.
"""
