/* The benchmarks' connection load, in C: the Python loop it replaces spent more time in the
 * interpreter than the kernel spent on a connection, which hid what the benchmarks measure
 * (the cost of translating a service address).
 *
 *   connloop accept PORT               accept and close until killed; prints "listening" first
 *   connloop connect IP PORT SECONDS   back-to-back connect + close with RST (SO_LINGER 0, so no
 *                                      TIME_WAIT runs the client out of ports); prints
 *                                      {"ok": N, "failed": N, "seconds": S}
 *
 * A connect gets 1 s (SO_SNDTIMEO bounds a blocking connect): a SYN lost to a full accept
 * queue or to a drop counts as failed rather than stalling the run.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int serve(int port)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1;
	int s = socket(AF_INET, SOCK_STREAM, 0);

	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(s, 4096) < 0) {
		perror("connloop accept");
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	for (;;) {
		int c = accept(s, NULL, NULL);

		if (c >= 0)
			close(c);
	}
}

static int load(const char *ip, int port, double seconds)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct linger linger = { .l_onoff = 1, .l_linger = 0 };
	struct timeval timeout = { .tv_sec = 1 };
	long ok = 0, failed = 0;
	double start, end, t;

	if (inet_pton(AF_INET, ip, &addr.sin_addr) != 1) {
		fprintf(stderr, "connloop connect: %s is not an IPv4 address\n", ip);
		return 2;
	}
	start = now();
	end = start + seconds;
	do {
		int s = socket(AF_INET, SOCK_STREAM, 0);

		if (s < 0) {
			perror("connloop connect: socket");
			return 1;
		}
		setsockopt(s, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
		setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
		if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) == 0)
			ok++;
		else
			failed++;
		close(s);
		t = now();
	} while (t < end);
	printf("{\"ok\": %ld, \"failed\": %ld, \"seconds\": %.6f}\n", ok, failed, t - start);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "accept") == 0)
		return serve(atoi(argv[2]));
	if (argc == 5 && strcmp(argv[1], "connect") == 0)
		return load(argv[2], atoi(argv[3]), atof(argv[4]));
	fprintf(stderr, "usage: connloop accept PORT | connloop connect IP PORT SECONDS\n");
	return 2;
}
