-- Deflated Sharpe ratio per trial (Bailey & Lopez de Prado 2014) and the figures it came from:
-- bars in the OOS window, parameter sets tried on that window and the variance of their Sharpe.
ALTER TABLE kb_trials ADD COLUMN dsr double precision;
ALTER TABLE kb_trials ADD COLUMN dsr_inputs jsonb;
