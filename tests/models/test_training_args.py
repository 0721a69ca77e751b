from types import SimpleNamespace

from models.training_args import cpu_training_args

PLAN = SimpleNamespace(batch_size=4, lr=1e-4, seed=3)


def test_every_trl_config_takes_the_shared_cpu_arguments(tmp_path):
    from trl import DPOConfig, KTOConfig, RewardConfig, RLOOConfig, SFTConfig

    shared = cpu_training_args(str(tmp_path), PLAN, steps=40)
    for config in (SFTConfig, DPOConfig, KTOConfig, RewardConfig, RLOOConfig):
        args = config(**shared)
        assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing
        assert args.save_strategy == "no" and args.report_to == []
        assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate, args.seed) == (40, 4, 1e-4, 3)
        assert args.lr_scheduler_type == "constant_with_warmup" and args.warmup_steps == 4  # the rounds' schedule
        assert args.logging_steps == 4 and args.disable_tqdm  # a tenth of the steps; no progress bar unless asked


def test_schedule_logging_and_progress_bar_can_be_asked_for(tmp_path):
    args = cpu_training_args(
        str(tmp_path), PLAN, steps=5, scheduler="constant", warmup_steps=0, logging_steps=1, progress_bar=True
    )
    assert (args["lr_scheduler_type"], args["warmup_steps"], args["logging_steps"]) == ("constant", 0, 1)
    assert not args["disable_tqdm"]
    assert cpu_training_args(str(tmp_path), PLAN, steps=5)["logging_steps"] == 1  # never 0 for fewer than ten steps
