"""The metrics a job exports: the contract the tests, rules and dashboard are checked against."""

# Every metric a CPU job exports (CUDA adds DEVICE_MEMORY); the rules and the dashboard may use only these.
EXPORTED = {
    "partialfc_samples_total",
    "partialfc_steps_total",
    "partialfc_step_duration_seconds",
    "partialfc_data_wait_seconds_total",
    "partialfc_step_phase_seconds_total",
    "partialfc_skipped_steps_total",
    "partialfc_checkpoint_saves_total",
    "partialfc_checkpoint_save_duration_seconds",
    "partialfc_loss",
    "partialfc_learning_rate",
    "partialfc_grad_norm",
    "partialfc_amp_loss_scale",
    "partialfc_epoch",
    "partialfc_sampled_centres",
    "partialfc_last_step_timestamp_seconds",
    "partialfc_checkpoint_last_success_timestamp_seconds",
    "partialfc_resident_memory_bytes",
    "partialfc_stalled_ranks",
    "partialfc_evaluation_score",
    "partialfc_evaluation_duration_seconds",
    "partialfc_build_info",
}
DEVICE_MEMORY = {
    "partialfc_device_memory_allocated_bytes",
    "partialfc_device_memory_reserved_bytes",
    "partialfc_device_memory_peak_bytes",
}
