"""Backtest runs as the KB reads them: summary metrics, OOS/IS windows, run fields, the candidacy gate, the scan."""
