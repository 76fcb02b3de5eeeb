"""The data-parallel backends, each in a module of its own: the process group and its collectives
(`process_group`), FSDP2 (`fsdp`), ZeRO stage 1 (`zero1`) and DeepSpeed ZeRO-2/3 (`deepspeed_zero`).

Stages never import these: they call `rlaif.distributed`, the one interface that routes each call (backward,
optimizer step, gathering for sampling and saving, optimizer state) to the backend that trains the model.
Imports point one way: process_group <- fsdp, zero1, deepspeed_zero <- rlaif.distributed <- stages."""
