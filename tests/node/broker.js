'use strict';
// Starts the broker the amqplib tests run against, as tests/python/conftest.py does:
// FERRYMQ_BIN (default: target/debug/ferrymq of this checkout) on a free port with a
// temporary data dir, or an external broker (e.g. RabbitMQ 3.10) when AMQP_TEST_PORT is set;
// RABBITMQCTL (e.g. "/usr/lib/rabbitmq/bin/rabbitmqctl -n clients@localhost") lets restart()
// stop and start the external broker's application.

const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const external = process.env.AMQP_TEST_PORT ? Number(process.env.AMQP_TEST_PORT) : null;
const againstFerryMQ = external === null;

function binary() {
  return process.env.FERRYMQ_BIN || path.resolve(__dirname, '..', '..', 'target', 'debug', 'ferrymq');
}

function spawnFerryMQ(dataDir, port) {
  return new Promise((resolve, reject) => {
    const proc = spawn(
      binary(),
      ['server', '--bind', '127.0.0.1', '--amqp-port', String(port), '--management-port', '0', '--prometheus-port', '0', '--data-dir', dataDir],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const log = [];
    let buffered = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`ferrymq did not start:\n${log.join('\n')}`));
    }, 30000);
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      buffered += chunk;
      const lines = buffered.split('\n');
      buffered = lines.pop();
      for (const line of lines) {
        if (log.length < 200) log.push(line);
        const m = /AMQP listening on [\d.]+:(\d+)/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve({ proc, port: Number(m[1]) });
        }
      }
    });
    proc.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`ferrymq exited (${code}) before listening:\n${log.join('\n')}`));
    });
  });
}

function stopProcess(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15000);
    proc.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    proc.kill('SIGTERM');
  });
}

async function startBroker() {
  if (!againstFerryMQ) {
    return {
      port: external,
      url: `amqp://guest:guest@127.0.0.1:${external}`,
      async restart() {
        const ctl = process.env.RABBITMQCTL;
        if (!ctl) throw new Error('set RABBITMQCTL to restart the external broker');
        const [cmd, ...args] = ctl.split(/\s+/).filter(Boolean);
        for (const action of ['stop_app', 'start_app']) {
          execFileSync(cmd, [...args, action], { stdio: 'ignore', timeout: 120000 });
        }
      },
      canRestart: Boolean(process.env.RABBITMQCTL),
      async stop() {},
    };
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferrymq-node-'));
  let { proc, port } = await spawnFerryMQ(dataDir, 0);
  return {
    port,
    url: `amqp://guest:guest@127.0.0.1:${port}`,
    canRestart: true,
    async restart() {
      await stopProcess(proc);
      ({ proc } = await spawnFerryMQ(dataDir, port));
    },
    async stop() {
      await stopProcess(proc);
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

// A test that passes against RabbitMQ 3.10 and fails against FerryMQ: against FerryMQ it
// must fail (and a pass says the divergence is fixed and the mark must go).
async function divergence(reason, body) {
  if (!againstFerryMQ) return body();
  let passed = false;
  try {
    await body();
    passed = true;
  } catch (err) {
    console.log(`# expected failure (FerryMQ divergence: ${reason}): ${err.message.split('\n')[0]}`);
  }
  if (passed) throw new Error(`passes against FerryMQ now; remove the divergence mark: ${reason}`);
}

module.exports = { startBroker, divergence, againstFerryMQ };
