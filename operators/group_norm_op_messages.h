// The operators' error messages, per thread: what group_norm_op.cc and
// weight_standardization_op.cc report and MXNet reads back through the library's one
// _msgSize/_msgGet (group_norm_op.cc's). The list itself is one C++17 inline variable shared by
// both files; the helpers below are each file's own.
#ifndef GN_MXNET_GROUP_NORM_OP_MESSAGES_H_
#define GN_MXNET_GROUP_NORM_OP_MESSAGES_H_

#include <sstream>
#include <string>
#include <vector>

namespace gn_op_messages {
// Error messages. lib_api's MX_ERROR_MSG appends to one process-wide list, unlocked, that no
// one clears, and MXNet reads it through this library's _msgSize/_msgGet after every call into
// the library (successes included), on the thread that made the call. Engine threads
// (MXNET_CPU_WORKER_NTHREADS > 1, one per GPU) run forward/backward while Python threads run
// shape inference, so a call that cleared the list raced with the others' adds and reads: a
// failing call showed another call's message or none, or the process crashed on a freed
// message. So each thread keeps its own messages here, emptied when one of its calls starts,
// and group_norm_op.cc defines the _msgSize/_msgGet that MXNet reads (gn_mxnet/operator/build.py
// compiles lib_api.cc with its two renamed away). lib_api itself appends to its global list
// only in its JSON parser (partitioners, graph passes) and in the default Backward of a
// stateful op: this library registers none of those, and such messages would not be shown.
inline thread_local std::vector<std::string> thread_messages;
}  // namespace gn_op_messages

namespace {

using gn_op_messages::thread_messages;

// error() << ...: one message of this thread's current call, kept when the statement ends.
class Message {
 public:
  Message() = default;
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message() { thread_messages.push_back(text_.str()); }
  template <typename V>
  Message& operator<<(const V& value) {
    text_ << value;
    return *this;
  }

 private:
  std::ostringstream text_;
};

Message error() { return Message(); }

// Every callback starts here, so that MXNet reads the messages of this call only.
void start_call() { thread_messages.clear(); }

}  // namespace

#endif  // GN_MXNET_GROUP_NORM_OP_MESSAGES_H_
