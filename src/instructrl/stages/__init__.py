"""One readable file per stage (DESIGN.md section 3): pretrain (the sandbox's base model),
sft, reward, ppo, collect. Each exposes `main(...)` and the CLI's `add_arguments`/`run`."""
