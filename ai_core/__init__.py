"""AI core: the placement service. Scores candidate GPUs with XGBoost, explains the choice, learns from outcomes."""
