//! One config struct per subcommand: the single source of CLI flags, YAML keys and the saved
//! `config.yaml`.
