// The help of --comm, the flag that picks how a command's ranks talk
// (worker/rank_group.h), for herd generate, bench and serve alike.
#pragma once

namespace herd {

inline constexpr char kCommFlagHelp[] =
    "ucx: ranks as processes without mpirun (rank, world size, leader from HERD_RANK, "
    "HERD_WORLD_SIZE, HERD_LEADER_ADDRESS); nccl: experts' rows over NCCL between the GPUs of "
    "--device cuda ranks (mpirun, --local-ranks, or one rank); default $HERD_COMM";

}  // namespace herd
