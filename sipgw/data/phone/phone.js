// sipgw test phone: the page's behaviour, on JsSIP (vendor/jssip.js).
//
// Fields may be prefilled from the page's query string: ?ws=URL&uri=sip:5001@host (or
// &user=5001, the host being this page's), &password=, &name=, &target=. The WebSocket URL
// defaults to this page's own origin, ws or wss, path /ws: where sipgw serves this page.
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const statusLine = $('status');
  const logPanel = $('log');
  const audioText = $('audio-text');
  const audioLevel = $('audio-level');
  const remoteAudio = $('remote-audio');
  const buttons = ['register', 'unregister', 'call', 'answer', 'hangup'].map($);

  let ua = null;
  let session = null;
  let registered = false;
  let statsTimer = null;

  // Plain words for JsSIP's end and failure causes.
  const CAUSES = {
    'Connection Error': 'the connection to the server failed',
    'Request Timeout': 'the server did not answer in time',
    'SIP Failure Code': 'the server refused the request',
    'Internal Error': 'an error inside the phone page',
    'Busy': 'the other side is busy',
    'Rejected': 'the call was rejected',
    'Redirected': 'the call was redirected elsewhere',
    'Unavailable': 'the other side is not available (not registered, or its connection is gone)',
    'Not Found': 'no such user is registered',
    'Address Incomplete': 'the address is incomplete',
    'Incompatible SDP': 'the two sides have no media in common',
    'Missing SDP': 'the other side sent no media description',
    'Authentication Error': 'the server refused the user name or password',
    'Terminated': 'the other side hung up',
    'WebRTC Error': 'the browser could not set up the media',
    'Canceled': 'the caller gave up before it was answered',
    'No Answer': 'nobody answered',
    'Expires': 'the call offer expired',
    'No ACK': 'the other side never confirmed the answer',
    'Dialog Error': 'the call lost track of its dialog',
    'User Denied Media Access': 'the browser gave no microphone (allow it; the page must be on https or localhost)',
    'Bad Media Description': 'the other side sent a media description this browser cannot use',
    'RTP Timeout': 'no media arrived for too long',
  };

  function plain(cause) {
    return CAUSES[cause] || cause || 'no reason given';
  }

  function log(message) {
    const time = new Date().toTimeString().slice(0, 8);
    logPanel.textContent += `${time}  ${message}\n`;
    logPanel.scrollTop = logPanel.scrollHeight;
  }

  function status(message, tone = '') {
    statusLine.textContent = message;
    statusLine.className = tone;
    log(message);
  }

  function refreshButtons() {
    const [register, unregister, call, answer, hangup] = buttons;
    const incoming = session && session.direction === 'incoming' && !session.isEstablished() && !session.isEnded();
    register.disabled = Boolean(ua);
    unregister.disabled = !ua;
    call.disabled = !registered || Boolean(session);
    answer.disabled = !incoming;
    hangup.disabled = !session;
  }

  // "5001" or "sip:5001@host": a SIP URI, on this page's host when only a user is given.
  function sipUri(text) {
    const value = text.trim();
    if (value === '') return '';
    if (/^sips?:/i.test(value)) return value;
    return value.includes('@') ? `sip:${value}` : `sip:${value}@${location.hostname}`;
  }

  function prefill() {
    const query = new URLSearchParams(location.search);
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ownUrl = location.host ? `${scheme}://${location.host}/ws` : '';
    $('ws-url').value = query.get('ws') || ownUrl;
    $('sip-uri').value = query.get('uri') || (query.get('user') ? sipUri(query.get('user')) : '');
    $('password').value = query.get('password') || '';
    $('display-name').value = query.get('name') || '';
    $('target').value = query.get('target') || '';
  }

  async function inboundAudio() {
    const connection = session && session.connection;
    let bytes = 0;
    let level = null;
    if (connection) {
      const report = await connection.getStats();
      report.forEach((stat) => {
        if (stat.type === 'inbound-rtp' && stat.kind === 'audio') {
          bytes += stat.bytesReceived || 0;
          if (typeof stat.audioLevel === 'number') level = stat.audioLevel;
        }
      });
    }
    return { bytes, level };
  }

  function watchAudio() {
    stopWatchingAudio();
    statsTimer = setInterval(async () => {
      const { bytes, level } = await inboundAudio();
      audioText.textContent = `Audio received: ${(bytes / 1000).toFixed(1)} kB, level ${(level ?? 0).toFixed(2)}`;
      audioLevel.value = level ?? 0;
    }, 500);
  }

  function stopWatchingAudio() {
    if (statsTimer !== null) clearInterval(statsTimer);
    statsTimer = null;
  }

  function playRemote(connection) {
    connection.addEventListener('track', (event) => {
      remoteAudio.srcObject = event.streams[0];
      log('Remote audio is playing.');
    });
  }

  const media = { mediaConstraints: { audio: true, video: false } };

  function follow(newSession, originator) {
    session = newSession;
    const peer = newSession.remote_identity.uri.toString();
    if (originator === 'remote') {
      status(`Incoming call from ${peer}: click Answer.`);
    } else {
      status(`Calling ${peer}…`);
    }
    if (newSession.connection) playRemote(newSession.connection);
    newSession.on('peerconnection', (e) => playRemote(e.peerconnection));
    newSession.on('progress', (e) => {
      if (originator === 'local') log(`Ringing (${e.response ? `${e.response.status_code} ${e.response.reason_phrase}` : 'progress'}).`);
    });
    newSession.on('accepted', () => log('The call was answered.'));
    newSession.on('confirmed', () => {
      status(`In a call with ${peer}.`, 'good');
      watchAudio();
      refreshButtons();
    });
    newSession.on('ended', (e) => {
      const by = e.originator === 'local' ? 'you hung up' : plain(e.cause);
      status(`Call with ${peer} ended: ${by}.`);
      endOfCall();
    });
    newSession.on('failed', (e) => {
      const code = e.message && e.message.status_code ? ` (${e.message.status_code} ${e.message.reason_phrase})` : '';
      const why = e.originator === 'local' && e.cause === 'Canceled' ? 'you hung up' : plain(e.cause);
      status(`Call with ${peer} failed: ${why}${code}.`, 'bad');
      endOfCall();
    });
    refreshButtons();
  }

  function endOfCall() {
    session = null;
    stopWatchingAudio();
    refreshButtons();
  }

  function register() {
    const wsUrl = $('ws-url').value.trim();
    const uri = sipUri($('sip-uri').value);
    if (!/^wss?:\/\//i.test(wsUrl)) {
      status('The WebSocket URL must start with ws:// or wss://.', 'bad');
      return;
    }
    if (!uri) {
      status('Enter a SIP URI or user name first.', 'bad');
      return;
    }
    let socket;
    try {
      socket = new JsSIP.WebSocketInterface(wsUrl);
      ua = new JsSIP.UA({
        sockets: [socket],
        uri,
        password: $('password').value || null,
        display_name: $('display-name').value.trim() || null,
        register: true,
        session_timers: false,
      });
    } catch (error) {
      ua = null;
      status(`Cannot use these settings: ${error.message || error}.`, 'bad');
      return;
    }
    ua.on('connected', () => log(`Connected to ${wsUrl}; registering as ${uri}…`));
    ua.on('disconnected', (e) => {
      registered = false;
      const detail = e.code ? ` (WebSocket closed, code ${e.code}${e.reason ? `: ${e.reason}` : ''})` : '';
      status(`Cannot reach the server at ${wsUrl}${detail}. Retrying…`, 'bad');
      refreshButtons();
    });
    ua.on('registered', (e) => {
      registered = true;
      status(`Registered as ${uri} (${e.response.status_code} ${e.response.reason_phrase}).`, 'good');
      refreshButtons();
    });
    ua.on('unregistered', () => {
      registered = false;
      status(`Not registered any more (${uri}).`);
      refreshButtons();
    });
    ua.on('registrationFailed', (e) => {
      registered = false;
      const code = e.response ? ` (${e.response.status_code} ${e.response.reason_phrase})` : '';
      status(`Registration failed: ${plain(e.cause)}${code}.`, 'bad');
      refreshButtons();
    });
    ua.on('newRTCSession', (e) => {
      if (session) {
        log(`Busy: declined a second call from ${e.session.remote_identity.uri}.`);
        e.session.terminate({ status_code: 486 });
        return;
      }
      follow(e.session, e.originator);
    });
    status(`Connecting to ${wsUrl}…`);
    ua.start();
    refreshButtons();
  }

  function unregister() {
    if (!ua) return;
    const stopping = ua;
    ua = null;
    registered = false;
    // stop() ends any call, unregisters, and closes the WebSocket when that is done.
    stopping.stop();
    status('Unregistered and disconnected.');
    refreshButtons();
  }

  function call() {
    const target = sipUri($('target').value);
    if (!target) {
      status('Enter whom to call first.', 'bad');
      return;
    }
    ua.call(target, media);
  }

  function answer() {
    if (session) session.answer(media);
  }

  function hangup() {
    if (session) session.terminate();
  }

  window.sipgwPhone = {
    // Bytes of audio received in the current call (WebRTC inbound-rtp bytesReceived).
    async inboundBytes() {
      return (await inboundAudio()).bytes;
    },
  };

  prefill();
  if (typeof window.JsSIP === 'undefined') {
    $('missing').style.display = 'block';
    buttons.forEach((button) => { button.disabled = true; });
    status('This page cannot work: the JsSIP library (vendor/jssip.js) is missing from this sipgw installation: install sipgw again.', 'bad');
    return;
  }
  $('register').addEventListener('click', register);
  $('unregister').addEventListener('click', unregister);
  $('call').addEventListener('click', call);
  $('answer').addEventListener('click', answer);
  $('hangup').addEventListener('click', hangup);
  log(`JsSIP ${JsSIP.version} loaded.`);
  refreshButtons();
})();
