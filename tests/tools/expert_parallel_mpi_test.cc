// Expert parallelism end to end with ranks as processes under mpirun (label
// mpi): the same cases and the same byte-for-byte comparison as
// expert_parallel_test.cc.
#include "tests/tools/expert_parallel_testing.h"

namespace herd {
namespace expert_parallel_testing {
namespace {

class MpiExpertParallelTest : public ExpertParallelTest {};

TEST_P(MpiExpertParallelTest, MpirunRanksMatchSingleProcess) {
  for (const Case& c : Cases()) ExpectSameAsSingleProcess(Mpirun(c.ranks), c);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MpiExpertParallelTest, ::testing::ValuesIn(kFixtureModels),
                         FixtureTestName);
INSTANTIATE_TEST_SUITE_P(HerdCheckpoints, MpiExpertParallelTest,
                         ::testing::Values(kHerdCheckpointModels.front()), HerdCheckpointTestName);

TEST(MpiExpertParallelMidSizeTest, MpirunRanksMatchSingleProcess) {
  ExpectMidSizeModelMatches(Mpirun(2), Mpirun(4));
}

}  // namespace
}  // namespace expert_parallel_testing
}  // namespace herd
