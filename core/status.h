// Status helpers used at every module boundary.
//
// Functions that can fail return absl::Status or absl::StatusOr<T>. These
// macros propagate errors without boilerplate. HERD_CHECK is for programmer
// bugs only (broken invariants), never for user input: it aborts the process.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define HERD_CONCAT_INNER_(a, b) a##b
#define HERD_CONCAT_(a, b) HERD_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` yields a non-OK status.
#define HERD_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status herd_status_ = (expr);        \
    if (!herd_status_.ok()) return herd_status_; \
  } while (0)

// `HERD_ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns x or returns the error.
#define HERD_ASSIGN_OR_RETURN(lhs, rexpr) \
  HERD_ASSIGN_OR_RETURN_IMPL_(HERD_CONCAT_(herd_statusor_, __LINE__), lhs, rexpr)
#define HERD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)  \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

// Aborts with file:line when an internal invariant is broken.
#define HERD_CHECK(cond)                                                                 \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: HERD_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)
