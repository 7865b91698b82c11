"""trading-kb: a knowledge base of trustworthy backtest runs."""
