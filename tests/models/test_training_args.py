from models.training_args import cpu_training_args


def test_every_trl_config_takes_the_shared_cpu_arguments(tmp_path):
    from trl import DPOConfig, KTOConfig, RewardConfig, RLOOConfig, SFTConfig

    shared = cpu_training_args(str(tmp_path), steps=40, batch_size=4, lr=1e-4, seed=3, scheduler="cosine")
    for config in (SFTConfig, DPOConfig, KTOConfig, RewardConfig, RLOOConfig):
        args = config(**shared)
        assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing
        assert args.save_strategy == "no" and args.report_to == []
        assert (args.max_steps, args.per_device_train_batch_size, args.seed) == (40, 4, 3)
        assert args.logging_steps == 4 and args.disable_tqdm  # a tenth of the steps; no progress bar unless asked


def test_logging_and_progress_bar_can_be_asked_for(tmp_path):
    args = cpu_training_args(
        str(tmp_path), steps=5, batch_size=1, lr=1e-4, seed=0, scheduler="constant", logging_steps=1, progress_bar=True
    )
    assert args["logging_steps"] == 1 and not args["disable_tqdm"]
    assert (
        cpu_training_args(str(tmp_path), steps=5, batch_size=1, lr=1e-4, seed=0, scheduler="constant")["logging_steps"]
        == 1
    )  # never 0, even for fewer than ten steps
