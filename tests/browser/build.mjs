// Build the browser bundles from the installed npm packages, without changing them.
//
// JsSIP 3.13 ships only CommonJS (lib/), no browser bundle, and SIP.js 0.21 only ES
// modules: esbuild bundles each into one script that defines a global, the way JsSIP's own
// build does (format iife, platform browser).
//
//   sipgw/data/phone/vendor/jssip.js   global JsSIP: the phone page shipped in the package,
//                                       and the rig's JsSIP test pages
//   tests/browser/build/sip.js         global SIP: the rig's SIP.js test page
//
// Both outputs are git-ignored; ./scripts/setup runs this after `npm ci`.
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');

function version(pkg) {
  return JSON.parse(readFileSync(join(here, 'node_modules', pkg, 'package.json'), 'utf8')).version;
}

const bundles = [
  {
    pkg: 'jssip',
    entry: 'node_modules/jssip/lib/JsSIP.js',
    globalName: 'JsSIP',
    outfile: join(repo, 'sipgw', 'data', 'phone', 'vendor', 'jssip.js'),
  },
  {
    pkg: 'sip.js',
    entry: 'node_modules/sip.js/lib/index.js',
    globalName: 'SIP',
    outfile: join(here, 'build', 'sip.js'),
  },
];

for (const b of bundles) {
  await build({
    absWorkingDir: here,
    entryPoints: [b.entry],
    bundle: true,
    format: 'iife',
    globalName: b.globalName,
    platform: 'browser',
    target: 'es2019',
    outfile: b.outfile,
    legalComments: 'eof',
    banner: { js: `/* ${b.pkg} ${version(b.pkg)} from npm, bundled by sipgw's tests/browser/build.mjs */` },
    logLevel: 'warning',
  });
}
