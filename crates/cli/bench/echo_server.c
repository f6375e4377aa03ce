/*
 * echo_server: the TCP server of `lpm bench clients --server tcp`.
 *
 *   echo_server PORT SIZE_MIB RATE_MIB_PER_S
 *
 * Holds SIZE MiB of anonymous memory and rewrites RATE MiB of it per
 * second from a thread of its own, with the page patterns and the
 * generation table of the dirtier of `lpm bench migrate` (each page says
 * which page it is and how often it was written). Its main thread serves
 * TCP on PORT with epoll: every request is one line, and its answer is the
 * line followed by how many lines this connection has sent so far and an
 * FNV-1a 64-bit hash of the line, "LINE COUNT HASH\n" (HASH in 16 hex
 * digits). A client that checks the three finds a lost, repeated,
 * reordered or corrupted request, or a connection whose state did not
 * survive a move. The line "verify" (which counts as no request) checks
 * every page against the table and the pattern and is answered
 * "verify OK PAGES ..." or "verify BAD ..." naming the first wrong page.
 *
 * It prints "ready ..." once its memory is written and it listens. SIGTERM
 * ends it at once (it is pid 1 of its partition).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define STEP_NS 2000000L
#define GOLDEN 0x9E3779B97F4A7C15ULL
#define LINE_MAX_LEN 1024

static uint8_t *area;
static uint32_t *gens;
static uint64_t npages;
static double per_s;
static uint64_t writes;
/* Held by the writer for each step and by "verify" for the whole check. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xBF58476D1CE4E5B9ULL;
	x ^= x >> 27;
	x *= 0x94D049BB133111EBULL;
	x ^= x >> 31;
	return x;
}

static uint64_t seed_of(uint64_t page, uint64_t gen)
{
	return mix(page * GOLDEN ^ (gen << 40) ^ 0x5A5A5A5A5A5A5A5AULL) | 1;
}

static void fill(uint64_t *p, uint64_t page, uint64_t gen)
{
	uint64_t s = seed_of(page, gen);
	p[0] = page;
	p[1] = gen;
	for (uint64_t k = 2; k < WORDS; k++)
		p[k] = s + k * GOLDEN;
}

static uint64_t check(const uint64_t *p, uint64_t page, uint64_t gen)
{
	if (p[0] != page)
		return 1;
	if (p[1] != gen)
		return 2;
	uint64_t s = seed_of(page, gen);
	for (uint64_t k = 2; k < WORDS; k++)
		if (p[k] != s + k * GOLDEN)
			return k + 1;
	return 0;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint64_t next_random(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1DULL;
}

/* Rewrites pages at the rate, paced in 2 ms steps; a backlog of at most
 * 10 ms is kept, so a frozen or throttled server does not catch up in a
 * burst. */
static void *writer(void *arg)
{
	(void)arg;
	double backlog = per_s * 0.010;
	double t0 = now_s();
	double done = 0;
	for (;;) {
		double target = (now_s() - t0) * per_s;
		if (target - done > backlog)
			done = target - backlog;
		pthread_mutex_lock(&lock);
		while (done + 1 <= target) {
			uint64_t i = next_random() % npages;
			gens[i]++;
			fill((uint64_t *)(area + i * PAGE), i, gens[i]);
			done += 1;
			writes++;
		}
		pthread_mutex_unlock(&lock);
		struct timespec step = { 0, STEP_NS };
		nanosleep(&step, NULL);
	}
	return NULL;
}

static int verify(char *out, size_t len)
{
	pthread_mutex_lock(&lock);
	uint64_t bad = 0, first = 0, word = 0;
	double t = now_s();
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t w = check((const uint64_t *)(area + i * PAGE), i, gens[i]);
		if (w && bad++ == 0) {
			first = i;
			word = w - 1;
		}
	}
	int n;
	if (bad)
		n = snprintf(out, len, "verify BAD %llu of %llu pages wrong, first page %llu word %llu (writes %llu)\n",
			     (unsigned long long)bad, (unsigned long long)npages, (unsigned long long)first,
			     (unsigned long long)word, (unsigned long long)writes);
	else
		n = snprintf(out, len, "verify OK %llu pages in %.0f ms (writes %llu)\n", (unsigned long long)npages,
			     (now_s() - t) * 1e3, (unsigned long long)writes);
	pthread_mutex_unlock(&lock);
	return n;
}

static uint64_t fnv1a(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)s[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

struct conn {
	char in[LINE_MAX_LEN];
	size_t len;
	uint64_t count;
};

/* Writes all of `buf`; the answers are small and each client waits for
 * its answer before the next request, so a full send buffer is rare and
 * waiting for it here is fine. */
static int send_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
		} else if (n < 0 && errno == EAGAIN) {
			struct pollfd p = { fd, POLLOUT, 0 };
			poll(&p, 1, 1000);
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			return -1;
		}
	}
	return 0;
}

/* Answers every complete line in the connection's buffer; -1 closes it. */
static int serve(int fd, struct conn *c)
{
	char out[LINE_MAX_LEN + 256];
	char *nl;
	while ((nl = memchr(c->in, '\n', c->len))) {
		size_t n = (size_t)(nl - c->in);
		int m;
		if (n == 6 && memcmp(c->in, "verify", 6) == 0) {
			m = verify(out, sizeof(out));
		} else {
			c->count++;
			m = snprintf(out, sizeof(out), "%.*s %llu %016llx\n", (int)n, c->in, (unsigned long long)c->count,
				     (unsigned long long)fnv1a(c->in, n));
		}
		if (send_all(fd, out, (size_t)m) < 0)
			return -1;
		memmove(c->in, nl + 1, c->len - n - 1);
		c->len -= n + 1;
	}
	/* A line longer than the buffer is not a request of the bench. */
	return c->len == sizeof(c->in) ? -1 : 0;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: echo_server PORT SIZE_MIB RATE_MIB_PER_S\n");
		return 2;
	}
	int port = atoi(argv[1]);
	uint64_t mib = strtoull(argv[2], NULL, 10);
	uint64_t rate = strtoull(argv[3], NULL, 10);
	if (mib == 0) {
		fprintf(stderr, "echo_server: size must be at least 1 MiB\n");
		return 2;
	}
	npages = mib * (1 << 20) / PAGE;
	area = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	gens = mmap(NULL, npages * sizeof(uint32_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED || gens == MAP_FAILED) {
		fprintf(stderr, "echo_server: mmap of %llu MiB: %s\n", (unsigned long long)mib, strerror(errno));
		return 1;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	rng ^= (uint64_t)getpid() * GOLDEN ^ (uint64_t)(now_s() * 1e9);
	for (uint64_t i = 0; i < npages; i++) {
		gens[i] = 1;
		fill((uint64_t *)(area + i * PAGE), i, 1);
	}
	per_s = (double)rate * (1 << 20) / PAGE;

	int srv = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int one = 1;
	setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = { htonl(INADDR_ANY) } };
	if (srv < 0 || bind(srv, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(srv, 128) < 0) {
		fprintf(stderr, "echo_server: listen on port %d: %s\n", port, strerror(errno));
		return 1;
	}
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = srv };
	epoll_ctl(ep, EPOLL_CTL_ADD, srv, &ev);
	if (rate) {
		pthread_t t;
		if (pthread_create(&t, NULL, writer, NULL) != 0) {
			fprintf(stderr, "echo_server: cannot start the writer thread\n");
			return 1;
		}
	}
	printf("ready port=%d size=%llu MiB rate=%llu MiB/s pages=%llu base=%p\n", port, (unsigned long long)mib,
	       (unsigned long long)rate, (unsigned long long)npages, (void *)area);
	fflush(stdout);

	size_t nconns = 1024;
	struct conn **conns = calloc(nconns, sizeof(*conns));
	for (;;) {
		struct epoll_event evs[64];
		int n = epoll_wait(ep, evs, 64, -1);
		if (n < 0 && errno == EINTR)
			continue;
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == srv) {
				int c;
				while ((c = accept4(srv, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					if ((size_t)c >= nconns) {
						size_t more = (size_t)c * 2;
						conns = realloc(conns, more * sizeof(*conns));
						memset(conns + nconns, 0, (more - nconns) * sizeof(*conns));
						nconns = more;
					}
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					conns[c] = calloc(1, sizeof(struct conn));
					struct epoll_event cev = { .events = EPOLLIN, .data.fd = c };
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
				}
				continue;
			}
			struct conn *c = conns[fd];
			ssize_t r = recv(fd, c->in + c->len, sizeof(c->in) - c->len, 0);
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (r > 0) {
				c->len += (size_t)r;
				if (serve(fd, c) == 0)
					continue;
			}
			epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
			close(fd);
			free(c);
			conns[fd] = NULL;
		}
	}
}
