// The plain loopback baseline of bench/run_serve_bench.sh: the round trip of a small request and
// response over one kept-open TCP connection on 127.0.0.1 (TCP_NODELAY), with no protocol at all.
// What `kiln serve` adds per request is its HTTP or gRPC round trip minus this.
//
//   g++ -O2 -std=c++20 -pthread bench/serve/loopback_rtt.cpp -o loopback_rtt && ./loopback_rtt [N] [BYTES]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

static bool full(int fd, char* buf, size_t n, bool send_it) {
  size_t done = 0;
  while (done < n) {
    ssize_t k = send_it ? ::send(fd, buf + done, n - done, 0) : ::recv(fd, buf + done, n - done, 0);
    if (k <= 0) return false;
    done += static_cast<size_t>(k);
  }
  return true;
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 20000;
  const size_t bytes = argc > 2 ? static_cast<size_t>(std::atoi(argv[2])) : 256;
  int ls = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(ls, 1) != 0 ||
      ::getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("listen");
    return 1;
  }
  int one = 1;
  std::thread server([&] {
    int fd = ::accept(ls, nullptr, nullptr);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::vector<char> buf(bytes);
    while (full(fd, buf.data(), bytes, false) && full(fd, buf.data(), bytes, true)) {
    }
    ::close(fd);
  });
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("connect");
    return 1;
  }
  std::vector<char> buf(bytes, 'x');
  std::vector<double> us;
  for (int i = 0; i < n + 1000; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    if (!full(fd, buf.data(), bytes, true) || !full(fd, buf.data(), bytes, false)) return 1;
    auto t1 = std::chrono::steady_clock::now();
    if (i >= 1000) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  ::close(fd);
  server.join();
  std::sort(us.begin(), us.end());
  double sum = 0;
  for (double v : us) sum += v;
  std::printf("{\"round_trips\": %d, \"bytes\": %zu, \"avg_us\": %.2f, \"p50_us\": %.2f, \"p99_us\": %.2f}\n", n, bytes,
              sum / us.size(), us[us.size() / 2], us[us.size() * 99 / 100]);
  return 0;
}
