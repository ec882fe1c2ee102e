// Shared by the rig's test pages: events to the driver, and media statistics.
window.rig = {
  // The driver exposes window.rigEvent before the page loads; a page opened by hand has
  // none and only logs.
  emit(kind, detail = {}) {
    console.log(`rig event ${kind} ${JSON.stringify(detail)}`);
    if (typeof window.rigEvent === 'function') window.rigEvent(kind, detail);
  },

  // Bytes of audio received so far on this peer connection: the sum of bytesReceived of its
  // inbound-rtp statistics (WebRTC stats, RTCInboundRtpStreamStats). 0 with no connection.
  async inboundBytes(connection) {
    if (!connection) return 0;
    const report = await connection.getStats();
    let bytes = 0;
    report.forEach((stat) => {
      if (stat.type === 'inbound-rtp' && stat.kind === 'audio') bytes += stat.bytesReceived || 0;
    });
    return bytes;
  },

  // Play what the peer sends in this page's <audio id="remote">.
  play(stream) {
    const audio = document.getElementById('remote');
    if (audio.srcObject !== stream) audio.srcObject = stream;
  },
};
